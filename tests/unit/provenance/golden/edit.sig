{
  "namespace": "cathrepo-edit",
  "payload_sha256": "edd4db842cd5d1f0d5e34e544841b1647a40d307b70c65a598c194c769781d55",
  "schema_version": 1,
  "signatures": [
    {
      "fingerprint": "SHA256:z/fSv0Z0RZS+Lccbc6ZoOWwt/fbj1VFJGSBKQbo4icE",
      "principal": "golden@example.com",
      "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs",
      "sig": "YyHwEp52E1rB5L8r+0pRYPjgeO97vDVuwwCnWmj0LJBTUd9J7YCQhBRXC8JbwWUhUioxw2VCNancwMqA48l8AQ=="
    }
  ]
}
