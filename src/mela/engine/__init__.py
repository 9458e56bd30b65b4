"""The engine: one training loop (Trainer), checkpoint I/O, and the episodic and supervised recipes."""
