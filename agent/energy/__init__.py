"""Energy: the charge planner and the schedule runner that charges in the planned slots.

May import uplink/, vehicle/ and the shared root modules; never commands/ or maintenance/.
"""
