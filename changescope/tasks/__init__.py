"""Training logic per task (Lightning modules), built on the models and the sample contract."""
