"""Actors sharing threads: OTP-style supervision and the node dispatcher.

No domain imports.
"""
