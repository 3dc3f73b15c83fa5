"""The reference vehicle simulator: ECU models that send the reference DBC's frames and answer
the telematics unit's command frames, for demos, tests and benches.

May import vehicle/, maintenance/ (the UDS transport it answers on) and the shared root modules.
"""
