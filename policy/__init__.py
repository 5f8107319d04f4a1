"""Policies that act in either simulator: scripted experts now; lerobot adapters and our own flow-matching policy in later work."""
