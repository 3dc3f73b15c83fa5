"""The way up: samples batched into the store-and-forward outbox and published over MQTT,
with the health counters. May import vehicle/ and the shared root modules.
"""
