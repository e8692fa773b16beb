"""The fast front door: a listener that takes plain keep-alive API requests itself
(`frontdoor`, `listener`, `upstream_head`) and hands anything else — bodies it does not
frame, upgrades, unusual heads — to aiohttp's door, so both behave the same.

May import: `proxy.request` and everything below it. Never `proxy.emulator`.
"""
