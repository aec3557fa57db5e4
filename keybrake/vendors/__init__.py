"""One package per vendor: its typed SDK client and its pricing rules, side by side.

The pricing modules are used by the server and import nothing from the SDK; the client
modules are used by the SDK and import nothing from the server.
"""
