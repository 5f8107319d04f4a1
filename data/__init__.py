"""Datasets: physics collection into LeRobotDataset v3 (reverie-collect) and training clips over any LeRobotDataset."""
