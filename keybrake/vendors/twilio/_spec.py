"""What Twilio's own OpenAPI spec says about the v2010 API, kept as data.

Generated from ``twilio_api_v2010.json`` (the ``twilio-oai`` spec that ``npm ci`` installs
under ``node_modules/@twilio-alpha/mcp/twilio-oai/spec/json/``):
``tests/vendors/test_twilio_pricing.py`` recomputes :data:`ARRAY_PARAMETERS` from that file
and fails when they differ.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ARRAY_PARAMETERS"]

#: Form parameters that the spec types as arrays (sent once per value), by ``POST`` path.
#: Any other parameter is a scalar and may be sent only once.
ARRAY_PARAMETERS: Mapping[str, frozenset[str]] = {
    "/2010-04-01/Accounts/{AccountSid}/Calls.json": frozenset(
        {"RecordingStatusCallbackEvent", "StatusCallbackEvent"}
    ),
    "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings.json": frozenset(
        {"RecordingStatusCallbackEvent"}
    ),
    "/2010-04-01/Accounts/{AccountSid}/ConnectApps/{Sid}.json": frozenset({"Permissions"}),
    "/2010-04-01/Accounts/{AccountSid}/Conferences/{ConferenceSid}/Participants.json": (
        frozenset(
            {
                "ConferenceRecordingStatusCallbackEvent",
                "ConferenceStatusCallbackEvent",
                "RecordingStatusCallbackEvent",
                "StatusCallbackEvent",
            }
        )
    ),
    "/2010-04-01/Accounts/{AccountSid}/Messages.json": frozenset({"MediaUrl", "PersistentAction"}),
}
