"""Maintenance: alert rules over signal values and diagnostic trouble codes over UDS.

May import uplink/, vehicle/ and the shared root modules; never commands/ or energy/.
"""
