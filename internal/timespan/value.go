package timespan

import (
	"time"

	"github.com/spf13/pflag"
)

// Value adapts a *time.Duration to pflag.Value, so that a flag such as
// --exit-idle-time takes a systemd time span: Set parses, String formats,
// Type returns "timespan". D must not be nil when Set is called.
type Value struct{ D *time.Duration }

var _ pflag.Value = (*Value)(nil)

// NewValue stores def in *d and returns a Value that sets *d.
func NewValue(d *time.Duration, def time.Duration) *Value {
	*d = def
	return &Value{D: d}
}

// Set parses s with Parse and stores the result; on error *v.D is unchanged.
func (v *Value) Set(s string) error {
	d, err := Parse(s)
	if err != nil {
		return err
	}
	*v.D = d
	return nil
}

// String formats the span with Format; it is "" for a Value without a D,
// which is what pflag may build to learn a flag's zero value.
func (v *Value) String() string {
	if v == nil || v.D == nil {
		return ""
	}
	return Format(*v.D)
}

// Type names the value in usage messages.
func (v *Value) Type() string { return "timespan" }
