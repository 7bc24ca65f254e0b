# SPDX-License-Identifier: Apache-2.0
# bash completion for socket-proxyd(8). Installed as
# $(PREFIX)/share/bash-completion/completions/socket-proxyd, where the
# bash-completion package loads it on the first <TAB> after socket-proxyd.
# Keep the option list equal to socket-proxyd --help: completion_test.go
# compares them.

_comp_socket_proxyd() {
	local cur prev words cword split
	# -s: "--opt=value" arrives as prev=--opt, cur=value, split=true.
	_init_completion -s || return

	case $prev in
	--proxy-protocol)
		mapfile -t COMPREPLY < <(compgen -W 'none v1 v2' -- "$cur")
		return
		;;
	--fdstore)
		mapfile -t COMPREPLY < <(compgen -W 'no on-stop always' -- "$cur")
		return
		;;
	--log-level)
		mapfile -t COMPREPLY < <(compgen -W 'debug info notice warning err' -- "$cur")
		return
		;;
	--balance)
		mapfile -t COMPREPLY < <(compgen -W 'first round-robin least-connections source' -- "$cur")
		return
		;;
	--listen | --listen-datagram | --listen-sequential-packet | --metrics)
		_filedir # a unix socket path, or HOST:PORT typed by hand
		return
		;;
	-c | --connections-max | --flows-max | --per-source-max | --socket-buffer | --exit-idle-time | --backend | --connect-timeout | \
		--idle-timeout | --keepalive | --shutdown-timeout | --busy-poll | --socket-mode | --health-interval | \
		--health-rise | --health-fall)
		return # a number, a time span, an octal mode or NAME=ADDRESS: nothing to offer
		;;
	esac
	$split && return

	if [[ $cur == -* ]]; then
		local opts='-c --connections-max= --flows-max= --per-source-max= --socket-buffer= --exit-idle-time= --listen= --listen-datagram=
			--listen-sequential-packet= --socket-mode= --backend= --balance= --health-interval= --health-rise=
			--health-fall=
			--connect-timeout= --idle-timeout= --keepalive= --proxy-protocol=
			--shutdown-timeout= --fdstore= --busy-poll= --metrics= --log-level= --check
			-h --help --version'
		mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
		# No space after "--opt=": the value follows at once.
		[[ ${#COMPREPLY[@]} == 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace
		return
	fi
	_filedir # a backend (one or more): a unix socket path, or HOST:PORT typed by hand
}
complete -F _comp_socket_proxyd socket-proxyd
