"""The vocabulary every layer shares: the verified `Principal` and the refusals the proxy
answers itself (`ProxyError` and its spec codes).

May import: nothing from `proxy`: it is the bottom layer.
"""
