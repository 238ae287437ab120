// Command chaos-checker checks register histories for linearizability with Porcupine.
//
// It reads one JSON document on stdin:
//
//	{"timeout_ms": N, "keys": {"<key>": {"initial": "<value>"|null, "ops": [Op, ...]}}}
//
// where Op is {"client": int, "call": int, "return": int, "input": {"f": "read"|"write"|"cas",
// "value"?, "expected"?, "new"?}, "output": null | {"value"?: string|null, "applied"?: bool}}.
// An operation whose outcome is unknown has output null and return set to the largest int64:
// it may take effect at any point after its call, or never. It prints one JSON line per key:
// {"key": ..., "result": "ok"|"illegal"|"unknown"}.
//
// Built and run by custos-chaos-tests (src/history.rs); nothing here is Custos-specific.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type input struct {
	F        string  `json:"f"`
	Value    *string `json:"value"`
	Expected *string `json:"expected"`
	New      *string `json:"new"`
}

type output struct {
	Value   *string `json:"value"`
	Applied *bool   `json:"applied"`
}

type op struct {
	Client int     `json:"client"`
	Call   int64   `json:"call"`
	Return int64   `json:"return"`
	Input  input   `json:"input"`
	Output *output `json:"output"`
}

type key struct {
	Initial *string `json:"initial"`
	Ops     []op    `json:"ops"`
}

type request struct {
	TimeoutMs int64          `json:"timeout_ms"`
	Keys      map[string]key `json:"keys"`
}

func same(a, b *string) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func model(initial *string) porcupine.Model {
	return porcupine.Model{
		Init: func() interface{} { return initial },
		Step: func(state, in, out interface{}) (bool, interface{}) {
			s := state.(*string)
			i := in.(input)
			o := out.(*output)
			switch i.F {
			case "read":
				if o == nil {
					return true, s
				}
				return same(o.Value, s), s
			case "write":
				return true, i.Value
			case "cas":
				applies := same(s, i.Expected)
				if o != nil && o.Applied != nil && *o.Applied != applies {
					return false, s
				}
				if applies {
					return true, i.New
				}
				return true, s
			}
			return false, s
		},
		Equal: func(a, b interface{}) bool { return same(a.(*string), b.(*string)) },
	}
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "chaos-checker: reading the history:", err)
		os.Exit(2)
	}
	names := make([]string, 0, len(req.Keys))
	for name := range req.Keys {
		names = append(names, name)
	}
	sort.Strings(names)
	out := json.NewEncoder(os.Stdout)
	for _, name := range names {
		k := req.Keys[name]
		ops := make([]porcupine.Operation, 0, len(k.Ops))
		for _, o := range k.Ops {
			ops = append(ops, porcupine.Operation{ClientId: o.Client, Input: o.Input, Call: o.Call, Output: o.Output, Return: o.Return})
		}
		result, _ := porcupine.CheckOperationsVerbose(model(k.Initial), ops, time.Duration(req.TimeoutMs)*time.Millisecond)
		verdict := map[porcupine.CheckResult]string{porcupine.Ok: "ok", porcupine.Illegal: "illegal", porcupine.Unknown: "unknown"}[result]
		if err := out.Encode(map[string]string{"key": name, "result": verdict}); err != nil {
			os.Exit(2)
		}
	}
}
