"""How a run's folds are trained: in this process, or in parallel on Ray's fold-trainer actors.

The modules, from pure to Ray: ``placement`` (resource arithmetic), ``scheduler`` (fold attempt
states and the retry/placement policy), ``base`` (the executor protocol), ``local`` (in-process),
``cluster`` (reads the Ray cluster), ``pool`` (warm actors), ``ray`` (the Ray executor). Nothing
is re-exported here, so importing the package never imports Ray.
"""
