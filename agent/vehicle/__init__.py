"""The car side: CAN frames in, typed samples out (DBC loading, decode plans, policies, the bus).

Imports only the shared root modules (config, errors, ...); no other stage.
"""
