"""Forager's tasks for the trainers and harnesses people already use: OpenEnv (openenv.py, openenv_app.py), a
Gymnasium env (gym.py), SWE-bench predictions graded as submits (evaluate.py), Parquet datasets (parquet.py).
Every episode driven through an interface runs Forager's own loop (driver.py) and is recorded as a trajectory."""
