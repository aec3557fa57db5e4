"""Stripe: :mod:`.client` is the SDK's typed sub-client, :mod:`.pricing` the proxy's rules."""
