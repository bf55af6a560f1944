"""Rewriting a torch checkpoint's pickle in place: storage locations (remap), weight keys (rekey)."""
