"""Everything that simulates, behind one interface: physics (robosuite/MuJoCo, the ground truth)
and, in later work, the learned world model and the imagined environment built on it."""
