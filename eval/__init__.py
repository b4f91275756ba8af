"""Evaluation: NetEval-style multiple-choice scoring (``eval.neteval``) and the desktop task suite."""
