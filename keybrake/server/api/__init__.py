"""The issuance API: keys, reads, tenants and tokens, and its OpenAPI document."""
