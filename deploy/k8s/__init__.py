"""The Kubernetes kustomize base (the YAML beside this file) and the generator of its files made from code."""
