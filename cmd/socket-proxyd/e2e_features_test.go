package main_test

// The options of issue 4, black-box: connect retries, idle timeout,
// keepalive, PROXY protocol (with a real nginx), graceful stop under load,
// backends per socket, and STATUS=.

// atOnce prepends, for our binary only, the options that bring back the
// original's immediate behaviour, for the tests of that behaviour: a refused
// backend closes the client at once (--connect-timeout=0) and a signal
// closes open connections at once (--shutdown-timeout=0). The original does
// not know these options.
func atOnce(im impl, args ...string) []string {
	if im.original {
		return args
	}
	return append([]string{"--connect-timeout=0", "--shutdown-timeout=0"}, args...)
}
