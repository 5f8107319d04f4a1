"""Training entry points, one per stage, and reverie-demo, the whole loop on the default task."""
