"""Model management on MLflow: tracked runs, registered versions with lineage, aliases.

`store` opens the MLflow store (a team's server, or the per-user embedded
one), `model_uri` parses `models:/NAME@ALIAS` and `models:/NAME/VERSION`,
`versions` registers exports and fetches them back verified, `tracking` is
the training hook that logs a run, `promotion` is the gate that moves an
alias. Lower layers never import this package: `cli` installs its hook into
training and passes its resolver to serving.
"""
