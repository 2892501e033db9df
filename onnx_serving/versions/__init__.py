"""Which served version answers: the router (default, canary, explicit), the shadow, and the
versions a service holds.
"""
