"""The area codes of the United States and Canada, for telling them apart from the rest of +1.

The North American Numbering Plan (country code 1) also covers the Caribbean (876 Jamaica,
809/829/849 the Dominican Republic, 284 the British Virgin Islands, ...) and the US
territories (787/939 Puerto Rico, 671 Guam, 340 the US Virgin Islands, 684 American Samoa,
670 the Northern Mariana Islands), all dialled as ``+1`` but priced as the countries they
are. A price for the prefix ``"1"`` means the US and Canada only: it applies to a ``+1NPA``
number only when ``NPA`` is in :data:`US_CA_AREA_CODES`.

Generated from the ``phonenumbers`` package (Google's libphonenumber metadata), version
9.0.43: every area code ``NPA`` for which some number ``NPA NXX XXXX`` matches one of the
number types of region ``US`` or ``CA`` (fixed line, mobile, toll free, shared cost, personal,
VoIP, pager, UAN, voicemail). Left out on purpose: premium rate (``900``), which is then
priced by the operator's longer prefixes or ``"default"``. The US territories are regions of
their own in libphonenumber, so they are not here. ``tests/vendors/test_twilio_pricing.py``
checks this table against the installed ``phonenumbers`` (``nanp_area_codes`` there
regenerates it).
"""

from __future__ import annotations

__all__ = ["US_CA_AREA_CODES"]

_CODES = (
    "201 202 203 204 205 206 207 208 209 210 212 213 214 215 216 217 218 219 220 223 224 "
    "225 226 227 228 229 231 234 235 236 239 240 248 249 250 251 252 253 254 256 257 260 "
    "262 263 267 269 270 272 273 274 276 279 281 283 289 301 302 303 304 305 306 307 308 "
    "309 310 312 313 314 315 316 317 318 319 320 321 323 324 325 326 327 329 330 331 332 "
    "334 336 337 339 341 343 346 347 350 351 352 353 354 360 361 363 364 365 367 368 369 "
    "380 382 385 386 401 402 403 404 405 406 407 408 409 410 412 413 414 415 416 417 418 "
    "419 423 424 425 428 430 431 432 434 435 437 438 440 442 443 445 447 448 450 458 463 "
    "464 468 469 470 472 474 475 478 479 480 484 500 501 502 503 504 505 506 507 508 509 "
    "510 512 513 514 515 516 517 518 519 520 521 522 523 524 525 526 527 528 529 530 531 "
    "532 533 534 539 540 541 544 548 551 557 559 561 562 563 564 566 567 570 571 572 573 "
    "574 575 577 579 580 581 582 584 585 586 587 588 600 601 602 603 604 605 606 607 608 "
    "609 610 612 613 614 615 616 617 618 619 620 622 623 626 628 629 630 631 633 636 639 "
    "640 641 645 646 647 650 651 656 657 659 660 661 662 667 669 672 678 680 681 682 683 "
    "686 689 701 702 703 704 705 706 707 708 709 712 713 714 715 716 717 718 719 720 724 "
    "725 726 727 728 730 731 732 734 737 738 740 742 743 747 748 753 754 757 760 762 763 "
    "765 769 770 771 772 773 774 775 778 779 780 781 782 785 786 800 801 802 803 804 805 "
    "806 807 808 810 812 813 814 815 816 817 818 819 820 821 825 826 828 830 831 832 833 "
    "835 838 839 840 843 844 845 847 848 850 854 855 856 857 858 859 860 862 863 864 865 "
    "866 867 870 872 873 877 878 879 888 901 902 903 904 905 906 907 908 909 910 912 913 "
    "914 915 916 917 918 919 920 925 928 929 930 931 934 936 937 938 940 941 942 943 945 "
    "947 948 949 951 952 954 956 959 970 971 972 973 975 978 979 980 983 984 985 986 989 "
)

#: Area codes (NPA) of the United States and Canada, toll-free and personal codes included.
US_CA_AREA_CODES: frozenset[str] = frozenset(_CODES.split())
