"""Developer tooling that no component imports and the image does not ship: the local stack that
`make serve` runs, and the check of the manifests against KServe's CRD schemas."""
