"""Twilio: :mod:`.pricing` holds the proxy's rules."""
