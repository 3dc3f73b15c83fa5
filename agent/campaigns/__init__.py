"""Campaigns: what to collect, decided by the back end (signed `campaign.apply`), collected in
bounded per-signal rings fed from the decode path and published around triggers.

May import uplink/ (the outbox), vehicle/ and the shared root modules; never commands/.
"""
