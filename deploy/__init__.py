"""rwkv_edge.deploy: targets beyond the Python runtime: which backends run which graph, ORT-format graphs for
reduced builds and the web, and the static web demo site."""
