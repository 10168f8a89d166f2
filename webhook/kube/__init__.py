"""The Kubernetes API: watches (Nodes, Leases, the cluster-cidr sources), the Lease claim store,
Events, leader election and the assigning loop. The only layer that calls the API while serving."""
