"""Signed remote commands: token verification, definitions, the replay store and the executor
that sends them on CAN. May import energy/, maintenance/, uplink/, vehicle/ and the root modules.
"""
