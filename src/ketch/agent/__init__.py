"""The node agent (Istio's istio-cni node agent): enrolls pods into the mesh by label.

It watches Pods and Namespaces, installs the in-pod redirection rules inside a pod's network
namespace, hands the netns to the node proxy over ZDS and marks the pod
`ambient.istio.io/redirection=enabled`. See docs/node-agent.md.
"""
