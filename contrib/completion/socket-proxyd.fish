# SPDX-License-Identifier: Apache-2.0
# fish completion for socket-proxyd(8). Installed as
# $(PREFIX)/share/fish/vendor_completions.d/socket-proxyd.fish. Keep the
# option list equal to socket-proxyd --help: completion_test.go compares them.

set -l span 'time span (e.g. 30s, 5min, infinity)'
complete -c socket-proxyd -s c -l connections-max -x -d 'Maximum number of connections'
complete -c socket-proxyd -l flows-max -x -d 'Maximum number of datagram flows'
complete -c socket-proxyd -l per-source-max -x -d 'Maximum connections and flows of one client address'
complete -c socket-proxyd -l socket-buffer -x -d 'Socket buffer size of each connection (e.g. 64K)'
complete -c socket-proxyd -l exit-idle-time -x -d "Exit when idle this long: $span"
complete -c socket-proxyd -l listen -r -d 'Also listen on HOST:PORT, a socket path or @name'
complete -c socket-proxyd -l listen-datagram -r -d 'Also listen for datagrams on HOST:PORT, a socket path or @name'
complete -c socket-proxyd -l listen-sequential-packet -r -d 'Also listen on a unix SOCK_SEQPACKET socket path or @name'
complete -c socket-proxyd -l socket-mode -x -d 'File mode of --listen unix sockets, in octal'
complete -c socket-proxyd -l backend -x -d 'Forward the socket named NAME to ADDRESS (NAME=ADDRESS); repeat NAME for several'
complete -c socket-proxyd -l balance -x -a 'first round-robin least-connections source' -d 'How a socket with several backends picks one'
complete -c socket-proxyd -l health-interval -x -d "Probe each of several backends this often: $span"
complete -c socket-proxyd -l health-rise -x -d 'Good probes in a row that bring a backend back'
complete -c socket-proxyd -l health-fall -x -d 'Failed probes in a row that take a backend down'
complete -c socket-proxyd -l connect-timeout -x -d "Retry a missing backend this long: $span"
complete -c socket-proxyd -l idle-timeout -x -d "Close a connection idle this long: $span"
complete -c socket-proxyd -l keepalive -x -d "TCP keepalive idle time: $span"
complete -c socket-proxyd -l proxy-protocol -x -a 'none v1 v2' -d 'Send a PROXY protocol header'
complete -c socket-proxyd -l shutdown-timeout -x -d "On SIGTERM, let connections finish this long: $span"
complete -c socket-proxyd -l fdstore -x -a 'no on-stop always' -d "Hand connections to systemd's fd store"
complete -c socket-proxyd -l busy-poll -x -d "After traffic, poll this long before sleeping (at most 1ms): $span"
complete -c socket-proxyd -l metrics -r -d 'Serve Prometheus metrics at /metrics on HOST:PORT, a socket path or @name'
complete -c socket-proxyd -l log-level -x -a 'debug info notice warning err' -d 'Log at LEVEL and above'
complete -c socket-proxyd -l check -d 'Check the command line and backends, print the plan and exit'
complete -c socket-proxyd -s h -l help -d 'Show help'
complete -c socket-proxyd -l version -d 'Show package version'
