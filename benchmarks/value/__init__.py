"""The value-head studies (the learned PRM of ``particlescale train-prm``): quality on GSM8K
test, accuracy against budget, step-level quality, training data and features."""
