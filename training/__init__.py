"""Training side of editkit: distillation, the demo teacher's recipe and the synthetic demo world."""
