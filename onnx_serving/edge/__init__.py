"""Before a request reaches a protocol: the route table (methods, media types, limits, auth), the
guards, admission control and the error contract.
"""
