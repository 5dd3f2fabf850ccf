"""`sact demo`: synthetic few-shot tasks with known answers, and the generator that makes them.

config.py     what the demo is asked to do (DemoConfig)
synthetic.py  the generated videos: four tasks, each testing one thing a head must use
run.py        generate, extract, train every variant per seed, evaluate, report, draw
"""
