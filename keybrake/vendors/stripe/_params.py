"""Which parameters of which Stripe write can't move money: the pricer's allowlists.

Taken per operation from Stripe's API reference (the OpenAPI spec, ``stripe/openapi``, and
the parameter types of ``stripe`` 16.1 for fields added since). A name is the top-level
parameter, before the first ``[`` (``metadata[k]`` is ``metadata``). A parameter missing from
a list is refused with 403 ``unpriced_endpoint``, so one Stripe adds tomorrow is refused until
someone reads what it does and lists it here.

Each list leaves out, on purpose, what the spec shows can move money (see
``docs/security.md`` for the table):

- customers: ``balance`` (a debit the next invoice collects), ``cash_balance`` (how a
  customer's cash is applied to invoices); on update also ``source``/``card``/
  ``bank_account`` (a new source retries past-due subscription invoices at once),
  ``coupon``/``promotion_code`` (may replace a bigger discount on running subscriptions),
  ``tax``/``tax_exempt`` (change what running subscriptions bill);
- payment intents: ``application_fee_amount``, ``transfer_data`` (send part of the payment
  elsewhere), ``amount_details``, ``amount_to_confirm``, ``hooks`` (can change the amount);
- charges: ``application_fee``/``application_fee_amount``/``transfer_data`` on capture,
  ``fraud_details`` on update (not known to move money; refused for caution);
- setup intents: ``attach_to_self``, ``flow_directions`` (set up the account's own money
  movement);
- products and prices: ``default_price`` on a product update, ``transfer_lookup_key`` and an
  update's ``currency_options`` (re-point or re-price what existing checkouts and
  subscriptions charge); on update, a product's ``tax_code`` and a price's ``tax_behavior``,
  and a customer's ``address`` and ``shipping`` (they decide the tax running subscriptions
  bill).
"""

from __future__ import annotations

from collections.abc import Mapping


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _shape(text: str) -> tuple[str, ...]:
    return tuple(text.strip("/").split("/"))


_PAYMENT_METHOD_TYPES = _names(
    """
    acss_debit affirm afterpay_clearpay alipay alma amazon_pay au_becs_debit bacs_debit
    bancontact billie bizum blik boleto card cashapp crypto custom customer_balance eps fpx
    giropay grabpay ideal interac_present kakao_pay klarna konbini kr_card link mb_way
    mobilepay multibanco naver_pay nz_bank_account oxxo p24 pay_by_bank payco paynow paypal
    paypay payto pix promptpay revolut_pay samsung_pay satispay scalapay sepa_debit sequra
    sofort sunbit swish twint upi us_bank_account wechat_pay zip
    """
)

_CUSTOMER_DESCRIPTION = _names(
    """
    address business_name description email expand individual_name invoice_prefix
    invoice_settings metadata name next_invoice_sequence phone preferred_locales shipping
    validate
    """
)

#: Details of a payment intent that don't change what it moves or where it goes.
_INTENT_DETAILS = _names(
    """
    allowed_payment_method_types capture_method customer customer_account description
    excluded_payment_method_types expand metadata payment_details payment_method
    payment_method_configuration payment_method_data payment_method_options
    payment_method_types receipt_email setup_future_usage shipping statement_descriptor
    statement_descriptor_suffix transfer_group
    """
)

_SETUP_INTENT = _names(
    """
    allowed_payment_method_types automatic_payment_methods confirm confirmation_token customer
    customer_account description excluded_payment_method_types expand mandate_data metadata
    on_behalf_of payment_method payment_method_configuration payment_method_data
    payment_method_options payment_method_types return_url single_use usage use_stripe_sdk
    """
)

_PRODUCT = _names(
    """
    active default_price_data description expand features id images marketing_features
    metadata name package_dimensions shippable statement_descriptor tax_code tax_details
    type unit_label url
    """
)

#: POSTs that are free when every parameter is on their list.
FREE_WRITES: Mapping[tuple[str, ...], frozenset[str]] = {
    _shape("/v1/customers"): _CUSTOMER_DESCRIPTION
    | _names("coupon payment_method promotion_code source tax tax_exempt tax_id_data test_clock"),
    _shape("/v1/customers/*"): (_CUSTOMER_DESCRIPTION - _names("address shipping"))
    | _names("default_alipay_account default_bank_account default_card default_source"),
    _shape("/v1/customers/*/sources"): _names(
        "alipay_account bank_account card expand metadata source validate"
    ),
    _shape("/v1/payment_methods"): _PAYMENT_METHOD_TYPES
    | _names(
        "allow_redisplay billing_details customer expand metadata payment_method radar_options type"
    ),
    _shape("/v1/payment_methods/*"): _names(
        "allow_redisplay billing_details card expand link metadata us_bank_account"
    ),
    _shape("/v1/payment_methods/*/attach"): _names("customer customer_account expand"),
    _shape("/v1/payment_methods/*/detach"): _names("expand"),
    _shape("/v1/payment_intents/*/cancel"): _names("cancellation_reason expand"),
    _shape("/v1/charges/*"): _names(
        "customer description expand metadata receipt_email shipping transfer_group"
    ),
    _shape("/v1/setup_intents"): _SETUP_INTENT,
    _shape("/v1/setup_intents/*"): _SETUP_INTENT - _names("confirm single_use usage"),
    _shape("/v1/setup_intents/*/confirm"): _names(
        "allowed_payment_method_types client_secret confirmation_token expand mandate_data "
        "payment_method payment_method_data payment_method_options return_url use_stripe_sdk"
    ),
    _shape("/v1/setup_intents/*/cancel"): _names("cancellation_reason expand"),
    _shape("/v1/products"): _PRODUCT,
    _shape("/v1/products/*"): _PRODUCT - _names("default_price_data id tax_code type"),
    _shape("/v1/prices"): _names(
        """
        active billing_scheme currency currency_options custom_unit_amount expand lookup_key
        metadata nickname product product_data recurring tax_behavior tiers tiers_mode
        transform_quantity unit_amount unit_amount_decimal
        """
    ),
    _shape("/v1/prices/*"): _names("active expand lookup_key metadata nickname"),
    _shape("/v1/refunds/*"): _names("expand metadata"),
}

#: Writes to an existing payment intent or charge, priced from the object (looked up first):
#: each with the parameters that can't change the price, and those the price reads.
INTENT_UPDATE = _shape("/v1/payment_intents/*")
INTENT_CONFIRM = _shape("/v1/payment_intents/*/confirm")
INTENT_CAPTURE = _shape("/v1/payment_intents/*/capture")
INTENT_INCREMENT = _shape("/v1/payment_intents/*/increment_authorization")
INTENT_CUSTOMER_BALANCE = _shape("/v1/payment_intents/*/apply_customer_balance")
CHARGE_CAPTURE = _shape("/v1/charges/*/capture")
OBJECT_WRITES: Mapping[tuple[str, ...], tuple[frozenset[str], frozenset[str]]] = {
    INTENT_UPDATE: (_INTENT_DETAILS, _names("amount currency")),
    INTENT_CONFIRM: (
        _names(
            """
            allowed_payment_method_types capture_method client_secret confirmation_token
            error_on_requires_action excluded_payment_method_types expand mandate mandate_data
            off_session payment_details payment_method payment_method_data
            payment_method_options payment_method_types radar_options receipt_email return_url
            setup_future_usage shipping use_stripe_sdk
            """
        ),
        frozenset(),
    ),
    INTENT_CAPTURE: (
        _names("expand final_capture metadata payment_details statement_descriptor")
        | _names("statement_descriptor_suffix"),
        _names("amount_to_capture"),
    ),
    INTENT_INCREMENT: (
        _names("description expand metadata payment_details statement_descriptor"),
        _names("amount"),
    ),
    INTENT_CUSTOMER_BALANCE: (_names("expand"), _names("amount currency")),
    CHARGE_CAPTURE: (
        _names("expand receipt_email statement_descriptor statement_descriptor_suffix")
        | _names("transfer_group"),
        _names("amount"),
    ),
}

#: DELETEs that are free, each with the parameters it may carry. Any other DELETE is refused:
#: removing a discount raises what a running subscription charges, removing a tax id (by
#: either path) can add tax to it, removing a pending invoice item can remove a credit.
#: Left out of the lists: ``invoice_now`` and ``prorate`` (cancelling a subscription bills
#: at once), ``proration_behavior``, ``proration_date`` and ``payment_behavior`` (removing a
#: subscription item can invoice the proration at once).
DELETE_PARAMS: Mapping[tuple[str, ...], frozenset[str]] = {
    _shape("/v1/subscriptions/*"): _names("cancellation_details expand"),
    _shape("/v1/customers/*/subscriptions/*"): _names("cancellation_details expand"),
    _shape("/v1/subscription_items/*"): _names("clear_usage expand"),
    # Objects whose removal stops or moves no money.
    **{
        _shape(path): _names("expand")
        for path in (
            "/v1/customers/*",
            "/v1/customers/*/sources/*",
            "/v1/customers/*/cards/*",
            "/v1/customers/*/bank_accounts/*",
            "/v1/products/*",
            "/v1/plans/*",
            "/v1/coupons/*",
            "/v1/webhook_endpoints/*",
            "/v1/ephemeral_keys/*",
            "/v1/invoices/*",
        )
    },
}
