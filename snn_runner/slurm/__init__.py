"""Slurm dispatch through submitit: submit a job file's tasks as job arrays, follow them.

``submit.py`` builds the executor and sends the arrays (the client side);
``task.py`` is what runs inside each array task; ``status.py`` reads back
where every task stands.
"""
