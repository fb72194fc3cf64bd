"""Platform as code: the local stack, the database, Vault and the local identity issuer.

Run, never imported by a worker. Workers only ever see what this sets up
through their own identity.
"""
