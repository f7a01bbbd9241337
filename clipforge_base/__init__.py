"""The lowest layer: what every clipforge package shares; imports nothing of clipforge (torch-free, stdlib only).
errors.py: UserError, the base of every user-facing error; atomic.py: the one atomic file write (fsync + rename)."""
