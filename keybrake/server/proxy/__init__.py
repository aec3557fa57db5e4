"""The enforcing proxy: one reading of each request, the vendors, the policy."""
