"""`shepherd replay`: which routing policy suits a trace, answered on a simulated fleet."""
