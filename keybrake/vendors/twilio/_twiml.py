"""Inline TwiML (a call's ``Twiml`` parameter): what it dials, or why it can't be priced.

A call created or updated with inline TwiML runs that document, and a ``<Dial>`` in it opens
a second leg that Twilio bills as a call of its own. What the document may hold:

- Verbs that add no leg: ``<Say>`` (with SSML), ``<Play>``, ``<Pause>``, ``<Gather>``
  (holding only those three), ``<Hangup>``, ``<Reject>``, ``<Redirect>``, ``<Leave>`` and
  ``<Record>``. Twilio bills some of them by the minute on top of the call (premium voices,
  speech recognition, recording, transcription): like a call's own ``Record`` or
  ``MachineDetection``, those add-ons are not priced.
- ``<Dial>`` with a phone number as its text, or ``<Number>`` nouns: each number is a leg,
  priced by the caller (see :func:`dialled_numbers`).
- Anything else is refused as ``unpriced_endpoint``: the nouns ``<Sip>``, ``<Client>``,
  ``<Conference>``, ``<Queue>``, ``<Sim>``, ``<Application>``, ``<WhatsApp>`` (a leg to a
  destination with no price per number, or one we can't see); ``<Enqueue>`` (TaskRouter
  bills each task); ``<Refer>`` (the far end of a SIP call places a call we can't see);
  ``<Connect>``, ``<Start>``, ``<Stop>``, ``<Pay>`` (streams, AI agents, rooms, payment
  connectors: billed by the minute or the session at prices we don't hold); ``<Sms>``,
  ``<Message>``; ``<Dial>`` anywhere but directly in ``<Response>``; and any element we
  don't know, wherever it is.

Names are compared case-insensitively and without their XML namespace, so a spelling Twilio
might accept is never read as harmless. A document with a ``<!DOCTYPE`` or ``<!ENTITY``
declaration is refused before parsing (no entity expansion, no external resources), as is
one that isn't well-formed or whose root isn't ``<Response>`` (400 ``bad_request``).

TwiML that Twilio fetches from a URL (a ``<Redirect>``, ``<Dial action>``, ``<Number url>``,
``<Gather action>``, ...) may dial anywhere: :func:`fetched_urls` lists those URLs, and the
pricer lets a call go only if each is under a prefix the operator trusts.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from keybrake.vendors._pricing import PricingRefusal

__all__ = ["dialled_numbers", "fetched_urls"]

#: Verbs that open no leg of their own.
LEGLESS = frozenset(
    {"say", "play", "pause", "gather", "hangup", "reject", "redirect", "leave", "record"}
)
#: The SSML elements ``<Say>`` may hold.
SSML = frozenset(
    {"break", "emphasis", "lang", "p", "phoneme", "prosody", "s", "say-as", "sub", "w"}
)
#: What each element may hold; an element not listed may hold text only.
_CHILDREN: dict[str, frozenset[str]] = {
    "response": LEGLESS | {"dial"},
    "gather": frozenset({"say", "play", "pause"}),
    "say": SSML,
    **dict.fromkeys(SSML, SSML),
}

_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
#: A comment or processing instruction: a parser drops it and joins the text around it,
#: which another parser might read as two texts.
_HIDDEN = re.compile(r"<!--|<\?(?!xml\s)", re.IGNORECASE)
#: An XML declaration naming an encoding other than UTF-8, which a ``str`` here ignores.
_ENCODING = re.compile(r"<\?xml\s[^>]*encoding\s*=\s*[\"'](?!utf-?8[\"'])", re.IGNORECASE)
#: What XML calls white space, trimmed from a URL as Twilio may trim it.
_XML_SPACE = " \t\n\r"


def _name(element: ET.Element) -> str:
    tag = element.tag if isinstance(element.tag, str) else ""
    return tag.rpartition("}")[2].casefold()


def _unpriced(what: str) -> PricingRefusal:
    return PricingRefusal(403, "unpriced_endpoint", f"TwiML {what} can't be priced")


def _parse(twiml: str) -> ET.Element:
    """The document's ``<Response>``.

    Raises:
        PricingRefusal: 400 ``bad_request`` for a malformed document or one with a DTD.
    """
    if _DECLARATION.search(twiml):
        raise PricingRefusal(400, "bad_request", "TwiML may not declare a DOCTYPE or entities")
    if _HIDDEN.search(twiml) or _ENCODING.search(twiml):
        raise PricingRefusal(
            400,
            "bad_request",
            "TwiML may hold no comments or processing instructions and must be UTF-8",
        )
    try:
        root = ET.fromstring(twiml)  # no DTD (refused above), so no entity to expand
    except (ET.ParseError, ValueError):
        raise PricingRefusal(400, "bad_request", "'Twiml' is not well-formed XML") from None
    if _name(root) != "response":
        raise PricingRefusal(400, "bad_request", "TwiML must be a <Response> document")
    for element in root.iter():
        if not all(name.isascii() for name in element.attrib):
            # Another reader may fold a non-ASCII name into one we check (a dotless i).
            raise PricingRefusal(400, "bad_request", "TwiML attribute names must be ASCII")
    return root


def fetched_urls(twiml: str) -> list[str]:
    """Every URL an inline TwiML document may have Twilio fetch more TwiML from.

    That is a ``<Redirect>``'s text and any attribute named ``action`` (``<Gather>``,
    ``<Record>``, ``<Dial>``) or ending in ``url`` (``<Number url>``, ``<Dial referUrl>``),
    in any letter case or namespace. Callbacks whose answers Twilio doesn't run
    (``statusCallback``, ``recordingStatusCallback``, ...) aren't listed.

    Raises:
        PricingRefusal: 400 ``bad_request`` for a malformed document or one with a DTD.
    """
    urls: list[str] = []
    for element in _parse(twiml).iter():
        if _name(element) == "redirect":
            urls.append((element.text or "").strip(_XML_SPACE))
        for attribute, value in element.attrib.items():
            name = attribute.rpartition("}")[2].casefold()
            if name == "action" or name.endswith("url"):
                urls.append(value.strip(_XML_SPACE))
    return urls


def dialled_numbers(twiml: str) -> list[str]:
    """The phone numbers an inline TwiML document dials, one per ``<Dial>`` leg.

    Raises:
        PricingRefusal: 400 ``bad_request`` for a malformed document or one with a DTD; 403
            ``unpriced_endpoint`` for a verb or noun whose cost we can't bound.
    """
    root = _parse(twiml)
    numbers: list[str] = []
    pending = [root]
    while pending:
        parent = pending.pop()
        allowed = _CHILDREN.get(_name(parent), frozenset())
        for child in parent:
            name = _name(child)
            if name not in allowed:
                raise _unpriced(f"<{child.tag}> in <{parent.tag}>")
            if name == "dial":
                numbers.extend(_dial_legs(child))
            else:
                pending.append(child)
    return numbers


def _dial_legs(dial: ET.Element) -> list[str]:
    """The numbers of one ``<Dial>``: its text, or each ``<Number>`` noun's."""
    text = "".join([dial.text or "", *(noun.tail or "" for noun in dial)]).strip()
    numbers = [text] if text else []
    for noun in dial:
        if _name(noun) != "number":
            raise _unpriced(f"<Dial><{noun.tag}>")
        if len(noun):
            raise PricingRefusal(400, "bad_request", "TwiML <Number> holds a phone number only")
        number = (noun.text or "").strip()
        if not number:
            raise PricingRefusal(400, "bad_request", "TwiML <Number> is empty")
        numbers.append(number)
    if not numbers:
        raise PricingRefusal(400, "bad_request", "TwiML <Dial> names nothing to dial")
    return numbers
