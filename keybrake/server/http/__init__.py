"""HTTP around the policy: error answers, aiohttp's own errors, the forwarder."""
