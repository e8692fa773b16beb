"""The vocabulary every layer shares: the verified `Principal` and the refusals the proxy
answers itself (`ProxyError` and its spec codes), a connection's clock and state-table
checks, and the holder of background tasks (`Background`).

May import: nothing from `proxy`: it is the bottom layer.
"""
