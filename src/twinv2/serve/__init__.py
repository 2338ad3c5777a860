"""Online serving (paper §3.4): the cluster store (store.py), the projection cache (projections.py), the
scorer (scorer.py), the HTTP service (app.py, server.py, `twinv2 serve`) and the nearline trainer
(nearline.py, `twinv2 nearline`); commands.py wires them to the command line."""
