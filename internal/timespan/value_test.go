package timespan

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// TestFlag drives Value through pflag the way cmd/socket-proxyd uses it.
func TestFlag(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    time.Duration
		wantErr string
	}{
		{name: "default", args: nil, want: Infinity},
		{name: "separate argument", args: []string{"--exit-idle-time", "5min 20s"}, want: 5*time.Minute + 20*time.Second},
		{name: "equals sign", args: []string{"--exit-idle-time=30"}, want: 30 * time.Second},
		{name: "infinity", args: []string{"--exit-idle-time=10s", "--exit-idle-time=infinity"}, want: Infinity},
		{name: "bad value", args: []string{"--exit-idle-time=5 parsecs"},
			wantErr: `invalid time span "5 parsecs": unknown unit "parsecs"; use e.g. 30s, 5min 20s, 500ms or infinity`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("socket-proxyd", pflag.ContinueOnError)
			fs.SetOutput(io.Discard)
			var d time.Duration
			fs.Var(NewValue(&d, Infinity), "exit-idle-time", "exit after `SPAN` with no connection")
			err := fs.Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want it to contain %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			if d != tt.want {
				t.Errorf("Parse(%q): d = %v, want %v", tt.args, d, tt.want)
			}
		})
	}

	t.Run("usage", func(t *testing.T) {
		fs := pflag.NewFlagSet("socket-proxyd", pflag.ContinueOnError)
		var d time.Duration
		fs.Var(NewValue(&d, Infinity), "exit-idle-time", "exit after `SPAN` with no connection")
		usage := fs.FlagUsages()
		if want := `--exit-idle-time SPAN   exit after SPAN with no connection (default infinity)`; !strings.Contains(usage, want) {
			t.Errorf("usage = %q, want it to contain %q", usage, want)
		}
	})
}
