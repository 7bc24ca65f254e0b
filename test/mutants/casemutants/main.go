// SPDX-License-Identifier: Apache-2.0

// Command casemutants lists, and with -run tries, the mutants gremlins
// v0.6.0 never runs: operators in the expressions of a switch's case
// clauses. gremlins decides what is covered from Go's coverage blocks, and
// a case clause's block starts after its colon, so every operator in
// `case e == unix.EAGAIN:` counts as not covered whatever the tests do
// (docs/RELIABILITY.md, "Mutants gremlins never runs"). It makes the same
// changes gremlins would (boundary, negation, arithmetic, inverted
// negatives) and runs each the way gremlins does:
//
//	go run ./test/mutants/casemutants -run ./internal/proxy
//
// Each mutant is written into the work tree, tested with
// `go test -short -count=1 -failfast`, and the file put back, also when
// the run is interrupted. make mutants-case runs it over internal/....
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// mutant is one change at one place of one file.
type mutant struct {
	file   string
	line   int
	col    int
	offset int
	from   string // the operator as written
	to     string // what replaces it
	kind   string // gremlins' name for the change
}

func (m mutant) String() string {
	return fmt.Sprintf("%s:%d:%d %s %s -> %s", filepath.Base(m.file), m.line, m.col, m.kind, m.from, m.to)
}

// changes is gremlins' table for the binary operators.
var changes = map[token.Token][]struct{ to, kind string }{
	token.LSS: {{"<=", "CONDITIONALS_BOUNDARY"}, {">=", "CONDITIONALS_NEGATION"}},
	token.LEQ: {{"<", "CONDITIONALS_BOUNDARY"}, {">", "CONDITIONALS_NEGATION"}},
	token.GTR: {{">=", "CONDITIONALS_BOUNDARY"}, {"<=", "CONDITIONALS_NEGATION"}},
	token.GEQ: {{">", "CONDITIONALS_BOUNDARY"}, {"<", "CONDITIONALS_NEGATION"}},
	token.EQL: {{"!=", "CONDITIONALS_NEGATION"}},
	token.NEQ: {{"==", "CONDITIONALS_NEGATION"}},
	token.ADD: {{"-", "ARITHMETIC_BASE"}},
	token.SUB: {{"+", "ARITHMETIC_BASE"}},
	token.MUL: {{"/", "ARITHMETIC_BASE"}},
	token.QUO: {{"*", "ARITHMETIC_BASE"}},
	token.REM: {{"*", "ARITHMETIC_BASE"}},
}

// list returns the mutants of the case expressions in dir's non-test files.
func list(dir string) ([]mutant, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	var out []mutant
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			return nil, err
		}
		at := func(pos token.Pos, from, to, kind string) {
			p := fset.Position(pos)
			out = append(out, mutant{file: name, line: p.Line, col: p.Column, offset: p.Offset, from: from, to: to, kind: kind})
		}
		inCase := func(e ast.Expr) {
			ast.Inspect(e, func(n ast.Node) bool {
				switch x := n.(type) {
				case *ast.BinaryExpr:
					for _, c := range changes[x.Op] {
						at(x.OpPos, x.Op.String(), c.to, c.kind)
					}
				case *ast.UnaryExpr:
					if x.Op == token.SUB {
						at(x.OpPos, "-", "+", "INVERT_NEGATIVES")
					}
				case *ast.FuncLit:
					return false // its body has blocks of its own
				}
				return true
			})
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if s, ok := n.(*ast.SwitchStmt); ok {
				for _, cc := range s.Body.List {
					for _, e := range cc.(*ast.CaseClause).List {
						inCase(e)
					}
				}
			}
			return true
		})
	}
	return out, nil
}

// try writes m into its file, runs pkg's tests, and puts the file back.
func try(ctx context.Context, m mutant, pkg string, timeout time.Duration) (string, error) {
	orig, err := os.ReadFile(m.file)
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(orig[m.offset:], []byte(m.from)) {
		return "", fmt.Errorf("%s: %q not found where it was listed", m, m.from)
	}
	mutated := slices.Concat(orig[:m.offset], []byte(m.to), orig[m.offset+len(m.from):])
	if err := os.WriteFile(m.file, mutated, 0o644); err != nil {
		return "", err
	}
	defer os.WriteFile(m.file, orig, 0o644)
	if err := exec.CommandContext(ctx, "go", "build", pkg).Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "NOT VIABLE", nil
	}
	cmd := exec.CommandContext(ctx, "go", "test", "-short", "-count=1", "-failfast", "-timeout", timeout.String(), pkg)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return "", ctx.Err() // interrupted: no verdict (gremlins would say LIVED)
	case err == nil:
		return "LIVED", nil
	case errors.As(err, &exit) && bytes.Contains(out, []byte("panic: test timed out")):
		return "TIMED OUT", nil
	case errors.As(err, &exit):
		return "KILLED", nil
	}
	return "", err
}

func main() {
	run := flag.Bool("run", false, "run each mutant's tests, not only list the mutants")
	timeout := flag.Duration("timeout", 3*time.Minute, "go test -timeout for each mutant")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: casemutants [-run] [-timeout D] PACKAGE-DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	dir := flag.Arg(0)
	pkg := "./" + filepath.Clean(dir)
	mutants, err := list(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "casemutants:", err)
		os.Exit(1)
	}
	if !*run {
		for _, m := range mutants {
			fmt.Println(m)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	counts := map[string]int{}
	start := time.Now()
	for i, m := range mutants {
		verdict, err := try(ctx, m, pkg, *timeout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "casemutants: %v (stopped at %d of %d; the file is restored)\n", err, i+1, len(mutants))
			os.Exit(1)
		}
		counts[verdict]++
		fmt.Printf("%-10s %s\n", verdict, m)
	}
	fmt.Printf("%s: %d case-expression mutants in %v: killed %d, lived %d, timed out %d, not viable %d\n",
		pkg, len(mutants), time.Since(start).Round(time.Second), counts["KILLED"], counts["LIVED"], counts["TIMED OUT"], counts["NOT VIABLE"])
}
